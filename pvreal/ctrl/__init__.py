"""pv-ctrl for the real device: HTTP/1.1 over Unix sockets (standard library only).

- `api`: what each endpoint does (objects, steps, commands, signal, containers, buildinfo);
- `server`: routing, role restriction, socket creation (mode 0600);
- `client`: http.client over AF_UNIX, used by `pvreal ctl` and the tests.
"""
