#!/usr/bin/env python3
"""Writes tests/fixtures/python_small.safetensors with Hugging Face's own safetensors library, so
test_io can check that ounce reads files produced by the reference implementation.

numpy has no bfloat16, so safetensors.numpy.save_file cannot write BF16; the tensors go through
safetensors.serialize_file (the function save_file wraps) with numpy arrays as the buffers. The
values are chosen to be exact in their dtype; tests/test_io.c hard-codes the same numbers.

usage: python3 tools/gen_safetensors_fixture.py [OUTPUT]   (needs: pip install safetensors numpy)
"""
import os
import sys

import numpy as np
import safetensors


def spec(dtype, arr):
    return safetensors.TensorSpec(dtype=dtype, shape=arr.shape, data_ptr=arr.ctypes.data, data_len=arr.nbytes)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "fixtures", "python_small.safetensors")

    weight = np.array([[1.5, -2.25, 3.0], [0.125, 0.001, -7.0]], dtype="<f4")
    bf16_values = np.array([1.0, -2.5, 0.15625, 256.0, -0.0078125], dtype="<f4")
    bf16_bits = (bf16_values.view("<u4") >> 16).astype("<u2")  # exact: low halves are zero
    assert np.all((bf16_values.view("<u4") & 0xFFFF) == 0)
    half = np.array([[0.5, -1.0], [65504.0, 2.0**-24]], dtype="<f2")
    ids = np.array([-3, 0, 2**40 + 1], dtype="<i8")
    pi = np.array(np.pi, dtype="<f8")  # 0-d: shape []

    tensors = {
        "weight": spec("float32", weight),
        "bf16": spec("bfloat16", bf16_bits),
        "half": spec("float16", half),
        "ids": spec("int64", ids),
        "pi": spec("float64", pi),
    }
    safetensors.serialize_file(tensors, out, metadata={"source": "gen_safetensors_fixture.py"})

    # Read back through the numpy front end for the dtypes numpy has.
    with safetensors.safe_open(out, framework="numpy") as f:
        assert np.array_equal(f.get_tensor("weight"), weight)
        assert np.array_equal(f.get_tensor("half"), half)
        assert np.array_equal(f.get_tensor("ids"), ids)
        assert f.get_tensor("pi").shape == () and f.get_tensor("pi") == pi
        assert f.metadata() == {"source": "gen_safetensors_fixture.py"}
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
