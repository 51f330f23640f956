"""detx.data"""
