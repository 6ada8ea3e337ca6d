#!/usr/bin/env python3
"""The least an inetd can do per connection, as a yardstick for spawn mode (not a peer).

    env -i PATH=/usr/bin:/bin python3 bench/functions/minimal-inetd.py PORT [PROGRAM]

A blocking accept(), posix_spawn (glibc: vfork + exec) of PROGRAM (default /bin/cat)
with the socket as its stdin and stdout, close; SIGCHLD ignored, so the kernel reaps the
children and the server hears nothing of their end. No logging, no limits, no timeouts,
no exit status: what is left is the cost of the accept, of the process start, and of
the program itself. See docs/functions.md, "Where the time goes".
"""
import os
import signal
import socket
import sys

port = int(sys.argv[1])
program = sys.argv[2] if len(sys.argv) > 2 else "/bin/cat"
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(1024)
env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
while True:
    conn, _ = listener.accept()
    fd = conn.fileno()
    os.posix_spawn(program, [program], env,
                   file_actions=[(os.POSIX_SPAWN_DUP2, fd, 0), (os.POSIX_SPAWN_DUP2, fd, 1)])
    conn.close()
