"""pvtwin's real Linux backend: storage, boot env files, mounts, runc, pyroute2, control socket."""
