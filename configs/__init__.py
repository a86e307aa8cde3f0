"""Run configs: each file defines get_config(arg: str | None = None) -> ConfigDict."""
