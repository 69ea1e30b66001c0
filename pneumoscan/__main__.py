"""`python -m pneumoscan` (what torchrun launches: `torchrun ... -m pneumoscan train ...`)."""

from .cli import run

run()
