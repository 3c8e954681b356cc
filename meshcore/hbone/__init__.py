"""meshcore/hbone"""
