"""Entry point: `python -m crosslora_jax.evaluate --help`."""

from crosslora_jax.cli.evaluate import run

if __name__ == "__main__":
    run()
