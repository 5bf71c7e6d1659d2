"""``make bench``: the gateway against a direct call to the same local upstream, in one run."""
