"""otaferry: signed, compressed, delta-encoded firmware updates over slow links.

The top-level package. ``python -m otaferry`` runs the command line
(``__main__``); the layers are ``otaferry.protocol``, ``otaferry.transport``,
``otaferry.device_fw`` and ``otaferry.tools``.
"""
