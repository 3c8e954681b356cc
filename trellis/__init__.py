"""trellis"""
