"""Shared test setup."""

import os

# The suite checks training against fp32 references. On CPUs with native bf16 (AMX, AVX512-BF16)
# --trainer.dtype=auto trains in bf16, so the suite pins the detection to "not native"; tests of the bf16
# choice patch it back. Subprocesses inherit the variable.
os.environ.setdefault("GPTLAB_NATIVE_BF16", "0")
