from setuptools import setup

# setuptools still needs setup.py for cffi_modules (everything else is in pyproject.toml).
# The extension uses the stable ABI (Py_LIMITED_API 3.10): one wheel serves 3.10+.
setup(
    cffi_modules=["cbits/build_ffi.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
