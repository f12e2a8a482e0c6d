//! `GetAvailableAgentsResponse` as the server sends it: entries encoded once
//! per change of their configuration, not once per call.
//!
//! GetAvailableAgents is the routing hot path, and building each answer from
//! the view cost a deep copy of every entry (a configuration and a
//! registration, some twenty strings) and then its encoding, per call. The
//! view now keeps each configuration's entry encoded until the configuration,
//! its instances or its manifest change, and an answer is those bytes with
//! the score appended. Protobuf allows a message's fields in any order, so a
//! client decodes it as the ordinary message. `build.rs` maps the proto
//! message to this type for the server only (`extern_path`); the client and
//! reflection see the message as declared.

use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};

/// Field numbers of `GetAvailableAgentsResponse.agents` and `AvailableAgent.score`.
const AGENTS: u32 = 1;
const SCORE: u32 = 7;
/// Key and fixed 64-bit value of the score field.
const SCORE_LEN: usize = 1 + 8;

/// One `AvailableAgent`, encoded without its score, and the score.
#[derive(Debug, Clone)]
pub struct EncodedAgent {
    /// The entry's fields but `score`.
    pub body: Arc<[u8]>,
    /// The configuration's availability score.
    pub score: f64,
}

impl EncodedAgent {
    fn len(&self) -> usize {
        self.body.len() + SCORE_LEN
    }
}

/// `agentry.v1.GetAvailableAgentsResponse`, server side.
#[derive(Debug, Clone, Default)]
pub struct AvailableAgents {
    /// Best score first.
    pub agents: Vec<EncodedAgent>,
}

impl prost::Message for AvailableAgents {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for agent in &self.agents {
            encoding::encode_key(AGENTS, WireType::LengthDelimited, buf);
            encoding::encode_varint(agent.len() as u64, buf);
            buf.put_slice(&agent.body);
            encoding::encode_key(SCORE, WireType::SixtyFourBit, buf);
            buf.put_f64_le(agent.score);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // The server only ever sends this message.
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.agents
            .iter()
            .map(|a| {
                encoding::key_len(AGENTS) + encoding::encoded_len_varint(a.len() as u64) + a.len()
            })
            .sum()
    }

    fn clear(&mut self) {
        self.agents.clear();
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::pb;

    /// The message as `routing.proto` declares it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Declared {
        #[prost(message, repeated, tag = "1")]
        agents: Vec<pb::AvailableAgent>,
    }

    #[test]
    fn decodes_as_the_declared_message() {
        let agent = pb::AvailableAgent {
            agent_id: "ide-agent".into(),
            capabilities: vec!["code_editing".into()],
            configuration: Some(pb::Configuration {
                id: "c".into(),
                max_workload: 5,
                ..Default::default()
            }),
            instance: Some(pb::Registration {
                instance_id: "ws_1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let encoded = AvailableAgents {
            agents: vec![
                EncodedAgent {
                    body: agent.encode_to_vec().into(),
                    score: 0.75,
                },
                EncodedAgent {
                    body: Arc::from(&[][..]),
                    score: 0.5,
                },
            ],
        };
        let bytes = encoded.encode_to_vec();
        assert_eq!(bytes.len(), encoded.encoded_len());
        let decoded = Declared::decode(bytes.as_slice()).expect("decodes");
        let mut expected = agent;
        expected.score = 0.75;
        assert_eq!(
            decoded.agents,
            vec![
                expected,
                pb::AvailableAgent {
                    score: 0.5,
                    ..Default::default()
                }
            ]
        );
    }
}
