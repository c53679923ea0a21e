"""Test infrastructure: real mosquitto, a real RTSP camera, the daemon as a child process.

Imported as ``tests.helpers`` (``tests/`` is a package; pytest puts the repo root on
``sys.path``). ``rtsp_server.py`` doubles as a script run by Debian's ``/usr/bin/python3``, so
it imports nothing from this package.
"""
