"""``python -m examples.bank``: the bank demo's command line, the same as ``eventsource demo``.

``--help`` lists its options; ``python -m examples.bank --schema bank_demo`` runs the demo.
"""

import sys

from eventsource.cli import main

main(["demo", *sys.argv[1:]])
