"""orch: an isolated Apache httpd + mod_perl server for every hosting tenant."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
