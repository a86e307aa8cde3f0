"""Reading and adapting parameters from other runs and formats."""
