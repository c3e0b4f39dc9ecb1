"""The paper: its experiments as plans, its published numbers, and the reproduction report."""
