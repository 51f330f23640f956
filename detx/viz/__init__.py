"""detx.viz"""
