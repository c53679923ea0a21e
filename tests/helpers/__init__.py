"""Test infrastructure: real mosquitto, a real RTSP camera, the daemon as a child process.

Imported as ``helpers`` (pytest puts ``tests/`` on ``sys.path`` because ``tests/`` has no
``__init__.py``). ``rtsp_server.py`` doubles as a script run by Debian's ``/usr/bin/python3``.
"""
