# Stub for the cffi-compiled module (built from cbits/, never committed).
from typing import Any

ffi: Any
lib: Any
