"""What tests of whole runs share about workdirs."""
import hashlib
import os


def digests(directory) -> dict:
    """{path relative to directory: SHA-256} of every file below directory: equal before
    and after a command that must change nothing."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out
