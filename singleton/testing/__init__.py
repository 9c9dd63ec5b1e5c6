"""Test and chaos helpers that ship with the package: the tick ledger and a cuttable TCP proxy."""
