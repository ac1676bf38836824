//! Every metric, span and log name the use cases emit, in one place.
