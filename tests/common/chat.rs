//! A chat member on a real socket, for the tests of rooms across servers.

use super::connect;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};

/// A chat member: its stream, and the lines it has read.
pub struct Member {
    pub writer: TcpStream,
    pub reader: BufReader<TcpStream>,
    /// Every line read so far.
    pub log: Vec<String>,
}

impl Member {
    /// Connects, takes the welcome, and takes the name `name`.
    pub fn join(addr: SocketAddr, name: &str) -> Member {
        let stream = connect(addr);
        let mut member = Member {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
            log: Vec::new(),
        };
        assert!(member.line().starts_with("* welcome "));
        member.say(&format!("/nick {name}"));
        member.wait_for(&format!("* you are now {name}"));
        member
    }

    pub fn say(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    pub fn line(&mut self) -> String {
        let mut line = String::new();
        let read = self.reader.read_line(&mut line);
        let tail = &self.log[self.log.len().saturating_sub(8)..];
        match read {
            Ok(0) => panic!("server closed; last lines: {tail:?}"),
            Ok(_) => {}
            Err(e) => {
                let _ = std::fs::write(
                    std::env::temp_dir().join("sockline-member.log"),
                    self.log.join("\n"),
                );
                panic!("{e}; {} lines read, the last: {tail:?}", self.log.len())
            }
        }
        let line = line.trim_end_matches('\n').to_owned();
        self.log.push(line.clone());
        line
    }

    /// Reads until `want`; returns the lines before it.
    pub fn wait_for(&mut self, want: &str) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            let line = self.line();
            if line == want {
                return before;
            }
            before.push(line);
        }
    }

    /// Reads until it has `n` lines that start with one of `prefixes`.
    pub fn said(&mut self, prefixes: &[&str], n: usize) -> Vec<String> {
        let mut got = Vec::new();
        while got.len() < n {
            let line = self.line();
            if prefixes.iter().any(|p| line.starts_with(p)) {
                got.push(line);
            }
        }
        got
    }
}
