//! `ljprobe report` on the gateway under mixed load: every tool ran, the page
//! renders in headless Chromium with every graph drawn, and its findings name
//! the planted problems of the routes driven.

use std::fs;

use ljprobe_tests::{assert_one_sentence, chromium, gateway, ljprobe, ljprobe_then, load_until_stopped, out_dir, stderr, stdout};
use xtask::{gateway::LuaJitBuild, load::Load, planted};

#[test]
fn report_of_mixed_load_renders_and_names_the_planted_problems() {
    let gw = gateway("report", LuaJitBuild::Debug);
    let routes = ["/hot/nyi", "/block/sleep", "/alloc/churn"];
    let _loads: Vec<_> = routes
        .iter()
        .map(|r| load_until_stopped(Load { url: gw.config.url(), route: r.to_string(), connections: 1, rate: None, duration: Default::default() }))
        .collect();
    let dir = out_dir().join("report");
    let _ = fs::remove_dir_all(&dir);
    let master = gw.master().to_string();
    // alloc samples in short windows at a 1% budget: 8 s gave it 33-44 samples,
    // few enough that one window of /hot/nyi's gsub buffers once took 98% of
    // the bytes from /alloc/churn (2 failures in about 10 runs); twice the windows.
    let o = ljprobe_then(&["report", "--pid", &master, "--duration", "16s", "--out", dir.to_str().unwrap()], |_| {});
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let index = dir.join("index.html");
    assert!(stdout(&o).contains(&index.display().to_string()), "the page's path is said:\n{}", stdout(&o));
    for tool in ["cpu", "offcpu", "epoll-loop", "gc", "alloc"] {
        for ext in ["svg", "json"] {
            assert!(dir.join(format!("{tool}.{ext}")).exists(), "{tool}.{ext} missing:\n{}", stdout(&o));
        }
    }

    let shot = dir.join("report.png");
    let page = chromium::check_page(&index, &shot).expect("Chromium renders the page");
    assert_eq!(page.graphs, 5, "one graph per tool");
    assert_eq!(page.rendered, page.graphs, "every graph drew");
    assert!(fs::metadata(&shot).unwrap().len() > 20_000, "a real screenshot");

    // The findings: one sentence each, naming the planted function of every
    // route driven, with the tool that saw it.
    let findings: Vec<&str> = page.dom.split("class=\"finding").skip(1).map(|f| &f[..f.find("</li>").unwrap_or(f.len())]).collect();
    assert!(!findings.is_empty(), "no findings in the page");
    let text = findings.join("\n");
    for (route, says) in [("/hot/nyi", "of CPU"), ("/block/sleep", "blocks the worker"), ("/alloc/churn", "allocate")] {
        let p = planted::for_route(route).unwrap();
        let file = p.file.rsplit('/').next().unwrap();
        let found = findings.iter().any(|f| f.contains(&p.function) && f.contains(&format!("{file}:{}", p.line)) && f.contains(says));
        assert!(found, "no finding names {} ({file}:{}) with `{says}`:\n{text}", p.function, p.line);
    }
    let hot = findings.iter().find(|f| f.contains("hot_nyi_work") && f.contains("of CPU")).unwrap();
    assert!(hot.contains("runs interpreted"), "the NYI route runs interpreted:\n{hot}");
}

#[test]
fn report_refuses_a_wrong_pid_in_one_sentence() {
    let dir = out_dir().join("report-bad");
    let _ = fs::remove_dir_all(&dir);
    let o = ljprobe(&["report", "--pid", "999999999", "--duration", "1s", "--out", dir.to_str().unwrap()]);
    assert_one_sentence(&o, "999999999");
    assert!(!dir.exists(), "no directory is made for a run that cannot happen");
}

#[test]
fn report_refuses_a_process_without_lua_in_one_sentence() {
    let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let dir = out_dir().join("report-no-lua");
    let o = ljprobe(&["report", "--pid", &sleeper.id().to_string(), "--duration", "1s", "--out", dir.to_str().unwrap()]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_one_sentence(&o, "no LuaJIT mapped");
}

#[test]
fn no_watchpoint_reaches_alloc() {
    // `report --no-watchpoint` hands the flag to alloc, whose JSON then says
    // no watchpoint could stand in for the uprobe on the atomic phase (which
    // Debian's build has, so the accounting is still read).
    let dir = out_dir().join("report-no-watchpoint");
    let _ = fs::remove_dir_all(&dir);
    let script = out_dir().join("report-no-watchpoint.lua");
    fs::write(&script, "local t = os.clock() + 6\nlocal x\nwhile os.clock() < t do x = { 1, 2, 3 } end\n").unwrap();
    let mut lj = std::process::Command::new("/usr/bin/luajit").arg(&script).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = lj.id().to_string();
    let o = ljprobe(&["report", "--pid", &pid, "--duration", "2s", "--tools", "alloc", "--no-watchpoint", "--out", dir.to_str().unwrap()]);
    let _ = lj.kill();
    let _ = lj.wait();
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let alloc: serde_json::Value = serde_json::from_str(&fs::read_to_string(dir.join("alloc.json")).unwrap()).unwrap();
    assert_eq!(alloc["sampling"]["watchpoint_allowed"], false, "{}", alloc["sampling"]);
    assert_eq!(alloc["sampling"]["cycles_hook"], "uprobe", "{}", alloc["sampling"]);
}
