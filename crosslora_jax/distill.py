"""Entry point: `python -m crosslora_jax.distill --help`."""

from crosslora_jax.cli.distill import run

if __name__ == "__main__":
    run()
