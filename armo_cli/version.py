"""armo's version, in a module of its own: every module that records it in an artifact imports it from here, not
from the package's front door (which imports the API lazily)."""

__version__ = "0.2.0.dev0"
