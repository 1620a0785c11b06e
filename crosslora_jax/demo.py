"""Entry point: `python -m crosslora_jax.demo`."""

from crosslora_jax.cli.demo import run

if __name__ == "__main__":
    run()
