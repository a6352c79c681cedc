"""Storage backends, one module per store. `swarm_core.store.open_store` picks one by URI scheme."""
