"""Science core: imaging, simulation, ellipses, masks, measures and the wire contract.

Everything may import it; it imports nothing of loopstream but itself and the generated v1 stubs.
"""
