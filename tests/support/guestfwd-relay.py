#!/usr/bin/env python3
"""One guest connection relayed to HOST:PORT, for QEMU user networking:

    -netdev 'user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:8500-cmd:python3 guestfwd-relay.py 127.0.0.1 8500'

QEMU runs the command once per guest connection, with the connection as stdin and stdout.
(`guestfwd=...-tcp:HOST:PORT` instead connects once, when QEMU starts, and carries a single
connection for the VM's life: a server that closes an idle connection, as OpenBao does after
10 s, leaves the guest nothing to talk to.) Used by builder/tests/vm_boot.rs.
"""
import os
import socket
import sys
import threading

s = socket.create_connection((sys.argv[1], int(sys.argv[2])))


def up():
    while True:
        d = os.read(0, 65536)
        if not d:
            break
        s.sendall(d)
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass


threading.Thread(target=up, daemon=True).start()
while True:
    d = s.recv(65536)
    if not d:
        break
    os.write(1, d)
