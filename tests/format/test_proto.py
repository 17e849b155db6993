"""The committed generated module matches spec/dcnn.proto."""

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from dcformat import dcnn_pb2

SPEC = Path(__file__).resolve().parents[2] / "spec"


def test_generated_module_matches_proto(tmp_path):
    out = tmp_path / "dcnn.desc"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{SPEC}", f"--descriptor_set_out={out}", "dcnn.proto"],
        check=True,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in fresh.message_type:  # protoc adds json names; the embedded descriptor omits them
        for nested in [message, *message.nested_type]:
            for field in nested.field:
                field.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto.FromString(dcnn_pb2.DESCRIPTOR.serialized_pb)
    assert fresh == committed, "dcformat/dcnn_pb2.py is stale: regenerate it from spec/dcnn.proto"


def test_import_dcformat_stays_light():
    code = "import sys, dcformat; print(sorted({'torch', 'onnx', 'safetensors', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
