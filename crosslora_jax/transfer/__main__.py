"""Entry point: `python -m crosslora_jax.transfer --help`."""

from crosslora_jax.cli.transfer import run

if __name__ == "__main__":
    run()
