"""Dev harness: local stacks, the demo and synthetic tracker input.

It may import everything; nothing in the product imports it.
"""
