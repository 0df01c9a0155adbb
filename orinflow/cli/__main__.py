"""`python -m orinflow.cli` (torchrun launches the training commands this way): the console script's entry."""
from ..entry import main

main()
