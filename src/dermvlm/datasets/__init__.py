"""Dataset adapters: each source format → canonical records (see DESIGN.md)."""
