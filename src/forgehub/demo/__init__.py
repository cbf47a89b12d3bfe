"""Demo modules shipped with forgehub."""
