def run(options):
    return {}


def table(report):
    return ""
