"""detx.evaluation"""
