"""trellis/lab"""
