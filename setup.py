from setuptools import setup

setup(cffi_modules=["cbits/build_ffi.py:ffibuilder"])
