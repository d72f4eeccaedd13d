"""Direction distributions: which blocks are active, their scales and update weights."""
