from loadtest.device import cpu_name


def test_the_processor_is_named_with_its_family_and_model_numbers(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("vendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n")
    assert cpu_name(cpuinfo) == "AMD EPYC (family 26, model 2)"


def test_a_processor_without_numbers_keeps_its_name(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Some Processor\n")
    assert cpu_name(cpuinfo) == "Some Processor"
