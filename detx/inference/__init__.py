"""detx.inference"""
