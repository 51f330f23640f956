"""detx.engine"""
