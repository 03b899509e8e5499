"""Revisions as files: read a state (file, trail folder or stdin), describe it, build its parts.

`pvreal rev` (pvreal/cli/rev/) is the command line over these modules and shared/'s parser,
diff and signatures.
"""
