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

/// Field numbers of `GetAvailableAgentsResponse.agents` and
/// `.explanation`, and of `AvailableAgent.score`.
const AGENTS: u32 = 1;
const EXPLANATION: u32 = 2;
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

    /// The entry as field `field` of the message being encoded.
    fn encode_as(&self, field: u32, buf: &mut impl BufMut) {
        encoding::encode_key(field, WireType::LengthDelimited, buf);
        encoding::encode_varint(self.len() as u64, buf);
        buf.put_slice(&self.body);
        encoding::encode_key(SCORE, WireType::SixtyFourBit, buf);
        buf.put_f64_le(self.score);
    }

    fn encoded_len_as(&self, field: u32) -> usize {
        encoding::key_len(field) + encoding::encoded_len_varint(self.len() as u64) + self.len()
    }
}

/// `agentry.v1.GetAvailableAgentsResponse`, server side.
#[derive(Debug, Clone, Default)]
pub struct AvailableAgents {
    /// Best score first.
    pub agents: Vec<EncodedAgent>,
    /// With `explain`: built per call, not cached.
    pub explanation: Option<super::Explanation>,
}

impl prost::Message for AvailableAgents {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for agent in &self.agents {
            agent.encode_as(AGENTS, buf);
        }
        if let Some(explanation) = &self.explanation {
            encoding::message::encode(EXPLANATION, explanation, buf);
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
            .map(|a| a.encoded_len_as(AGENTS))
            .sum::<usize>()
            + self
                .explanation
                .as_ref()
                .map_or(0, |e| encoding::message::encoded_len(EXPLANATION, e))
    }

    fn clear(&mut self) {
        self.agents.clear();
        self.explanation = None;
    }
}

/// Field numbers of `SearchAgentsResponse` and of `SearchResult.agent`.
const RESULTS: u32 = 1;
const NEXT_PAGE_TOKEN: u32 = 2;
const TOTAL_SIZE: u32 = 3;
const RESULT_AGENT: u32 = 8;

/// One `SearchResult`: its own fields, and its agent from the view's cache.
#[derive(Debug, Clone, Default)]
pub struct EncodedResult {
    /// Every field but `agent`.
    pub head: super::SearchResult,
    /// The best instance's entry, when available.
    pub agent: Option<EncodedAgent>,
}

impl EncodedResult {
    fn len(&self) -> usize {
        prost::Message::encoded_len(&self.head)
            + self
                .agent
                .as_ref()
                .map_or(0, |a| a.encoded_len_as(RESULT_AGENT))
    }
}

/// `agentry.v1.SearchAgentsResponse`, server side: each result's agent is
/// the entry `GetAvailableAgents` answers, encoded once per change of its
/// configuration, as there.
#[derive(Debug, Clone, Default)]
pub struct SearchAnswer {
    pub results: Vec<EncodedResult>,
    pub next_page_token: String,
    pub total_size: i32,
}

impl prost::Message for SearchAnswer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for r in &self.results {
            encoding::encode_key(RESULTS, WireType::LengthDelimited, buf);
            encoding::encode_varint(r.len() as u64, buf);
            r.head.encode_raw(buf);
            if let Some(agent) = &r.agent {
                agent.encode_as(RESULT_AGENT, buf);
            }
        }
        if !self.next_page_token.is_empty() {
            encoding::string::encode(NEXT_PAGE_TOKEN, &self.next_page_token, buf);
        }
        if self.total_size != 0 {
            encoding::int32::encode(TOTAL_SIZE, &self.total_size, buf);
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
        self.results
            .iter()
            .map(|r| {
                encoding::key_len(RESULTS) + encoding::encoded_len_varint(r.len() as u64) + r.len()
            })
            .sum::<usize>()
            + if self.next_page_token.is_empty() {
                0
            } else {
                encoding::string::encoded_len(NEXT_PAGE_TOKEN, &self.next_page_token)
            }
            + if self.total_size == 0 {
                0
            } else {
                encoding::int32::encoded_len(TOTAL_SIZE, &self.total_size)
            }
    }

    fn clear(&mut self) {
        *self = SearchAnswer::default();
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
            explanation: None,
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

    #[test]
    fn a_search_answer_decodes_as_the_declared_message() {
        let agent = pb::AvailableAgent {
            agent_id: "translator".into(),
            ..Default::default()
        };
        let head = pb::SearchResult {
            configuration_id: "c".into(),
            relevance: 1.0,
            skills: vec![pb::SkillMatch {
                skill_id: "translate".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let answer = SearchAnswer {
            results: vec![
                EncodedResult {
                    head: head.clone(),
                    agent: Some(EncodedAgent {
                        body: agent.encode_to_vec().into(),
                        score: 0.5,
                    }),
                },
                EncodedResult {
                    head: head.clone(),
                    agent: None,
                },
            ],
            next_page_token: "t".into(),
            total_size: 7,
        };
        let bytes = answer.encode_to_vec();
        assert_eq!(bytes.len(), answer.encoded_len());
        /// `SearchAgentsResponse` as `routing.proto` declares it.
        #[derive(Clone, PartialEq, prost::Message)]
        struct DeclaredSearch {
            #[prost(message, repeated, tag = "1")]
            results: Vec<pb::SearchResult>,
            #[prost(string, tag = "2")]
            next_page_token: String,
            #[prost(int32, tag = "3")]
            total_size: i32,
        }
        let decoded = DeclaredSearch::decode(bytes.as_slice()).expect("decodes");
        let mut with_agent = head.clone();
        with_agent.agent = Some(pb::AvailableAgent {
            score: 0.5,
            ..agent
        });
        assert_eq!(
            decoded,
            DeclaredSearch {
                results: vec![with_agent, head],
                next_page_token: "t".into(),
                total_size: 7,
            }
        );
    }
}
