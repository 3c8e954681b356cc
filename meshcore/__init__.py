"""meshcore"""
