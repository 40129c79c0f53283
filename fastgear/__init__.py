"""fastgear: a Gearman job server, drop-in for gearmand 1.1.20, with a GIL-free Cython core."""
__version__ = "0.1.0"
GEARMAND_COMPAT_VERSION = "1.1.20"
