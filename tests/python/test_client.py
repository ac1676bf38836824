"""sandboxd from Python: grpcio stubs generated at test time from proto/ by grpcio-tools, and
grpcio-health-checking.

Run by the Rust end-to-end suite (tests/e2e/python.rs), which spawns a real sandboxd and passes
SANDBOXD_ADDR (host:port of the gRPC listener) and SANDBOXD_VOLUME (a directory under the
server's allowed volume root). By hand, against scripts/up:

    SANDBOXD_ADDR=127.0.0.1:50051 SANDBOXD_VOLUME=$PWD/var/volumes/py python3 tests/python/test_client.py
"""

import os
import sys
import unittest
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# Ignored by git (.gitignore): generated afresh on every run, so it cannot drift from proto/.
GEN = HERE / "gen"


def generate_stubs() -> None:
    """Compiles proto/sandbox/v1/sandbox.proto into GEN and puts GEN on the import path."""
    from grpc_tools import protoc

    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    GEN.mkdir(exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{well_known}",
            f"--python_out={GEN}",
            f"--grpc_python_out={GEN}",
            str(ROOT / "proto" / "sandbox" / "v1" / "sandbox.proto"),
        ]
    )
    if status != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with status {status}")
    sys.path.insert(0, str(GEN))


generate_stubs()

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc  # noqa: E402

ADDR = os.environ.get("SANDBOXD_ADDR", "127.0.0.1:50051")
VOLUME = os.environ.get("SANDBOXD_VOLUME", "")
TIMEOUT = 30


class SandboxdClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.channel = grpc.insecure_channel(ADDR)
        grpc.channel_ready_future(cls.channel).result(timeout=10)
        cls.sandboxes = sandbox_pb2_grpc.SandboxServiceStub(cls.channel)
        cls.health = health_pb2_grpc.HealthStub(cls.channel)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.channel.close()

    def test_health_is_serving(self) -> None:
        for service in ("", "sandbox.v1.SandboxService"):
            response = self.health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT
            )
            self.assertEqual(response.status, health_pb2.HealthCheckResponse.SERVING, service)

    def test_create_then_delete(self) -> None:
        self.assertTrue(VOLUME, "SANDBOXD_VOLUME must name a directory under an allowed root")
        chat_id = str(uuid.uuid4())
        request = sandbox_pb2.CreateSandboxRequest(
            chat_id=chat_id, agent_id="default", volume_host_path=VOLUME
        )
        created = self.sandboxes.CreateSandbox(request, timeout=TIMEOUT)
        self.assertEqual(created.result, sandbox_pb2.CREATE_SANDBOX_RESULT_CREATED)
        sandbox = created.sandbox
        self.assertEqual(sandbox.chat_id, chat_id)
        self.assertEqual(sandbox.agent_id, "default")
        self.assertEqual(sandbox.volume_host_path, VOLUME)
        self.assertTrue(sandbox.HasField("endpoint"))
        self.assertGreater(sandbox.endpoint.port, 0)
        self.assertGreater(sandbox.expires_at.ToDatetime(), sandbox.created_at.ToDatetime())

        reused = self.sandboxes.CreateSandbox(request, timeout=TIMEOUT)
        self.assertEqual(reused.result, sandbox_pb2.CREATE_SANDBOX_RESULT_REUSED)
        self.assertEqual(reused.sandbox.session_id, sandbox.session_id)

        self.assertEqual(reused.sandbox.state, sandbox_pb2.SANDBOX_STATE_RUNNING)
        got = self.sandboxes.GetSandbox(
            sandbox_pb2.GetSandboxRequest(chat_id=chat_id), timeout=TIMEOUT
        )
        # A reuse is activity: the same sandbox, its last_active_at moved on.
        self.assertEqual(got.sandbox, reused.sandbox)
        self.assertGreaterEqual(
            reused.sandbox.last_active_at.ToDatetime(), sandbox.last_active_at.ToDatetime()
        )
        reused.sandbox.last_active_at.CopyFrom(sandbox.last_active_at)
        self.assertEqual(reused.sandbox, sandbox)

        paused = self.sandboxes.PauseSandbox(
            sandbox_pb2.PauseSandboxRequest(chat_id=chat_id), timeout=TIMEOUT
        )
        self.assertEqual(paused.sandbox.state, sandbox_pb2.SANDBOX_STATE_PAUSED)
        with self.assertRaises(grpc.RpcError) as raised:
            self.sandboxes.TouchSandbox(
                sandbox_pb2.TouchSandboxRequest(chat_id=chat_id), timeout=TIMEOUT
            )
        self.assertEqual(raised.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        resumed = self.sandboxes.ResumeSandbox(
            sandbox_pb2.ResumeSandboxRequest(chat_id=chat_id), timeout=TIMEOUT
        )
        self.assertEqual(resumed.sandbox.state, sandbox_pb2.SANDBOX_STATE_RUNNING)
        self.assertEqual(resumed.sandbox.session_id, sandbox.session_id)
        touched = self.sandboxes.TouchSandbox(
            sandbox_pb2.TouchSandboxRequest(chat_id=chat_id), timeout=TIMEOUT
        )
        self.assertEqual(touched.sandbox.container_id, sandbox.container_id)

        deleted = self.sandboxes.DeleteSandbox(
            sandbox_pb2.DeleteSandboxRequest(chat_id=chat_id), timeout=TIMEOUT
        )
        self.assertEqual(deleted.result, sandbox_pb2.DELETE_SANDBOX_RESULT_DELETED)
        self.assertEqual(deleted.session_id, sandbox.session_id)
        self.assertEqual(deleted.container_id, sandbox.container_id)

        again = self.sandboxes.DeleteSandbox(
            sandbox_pb2.DeleteSandboxRequest(chat_id=chat_id), timeout=TIMEOUT
        )
        self.assertEqual(again.result, sandbox_pb2.DELETE_SANDBOX_RESULT_NOT_FOUND)

        with self.assertRaises(grpc.RpcError) as raised:
            self.sandboxes.GetSandbox(
                sandbox_pb2.GetSandboxRequest(chat_id=chat_id), timeout=TIMEOUT
            )
        self.assertEqual(raised.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_a_malformed_chat_id_is_invalid_argument(self) -> None:
        with self.assertRaises(grpc.RpcError) as raised:
            self.sandboxes.GetSandbox(
                sandbox_pb2.GetSandboxRequest(chat_id="not-a-uuid"), timeout=TIMEOUT
            )
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("chat_id", raised.exception.details())


if __name__ == "__main__":
    unittest.main(verbosity=2)
