"""nodeagent"""
